"""Distributed training: Ape-X on Ray (``pip install 'dqnkit[ray]'``)."""
