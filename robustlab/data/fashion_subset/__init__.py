"""A fixed subset of Fashion-MNIST (see README.md beside this file)."""
