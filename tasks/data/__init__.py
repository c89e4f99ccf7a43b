"""Dataset loaders: each returns raw arrays (images as uint8 or float, labels as int64).

Loaders never touch the network at run time unless they say so; each documents where it looks.
"""
