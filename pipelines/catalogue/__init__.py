"""What models exist and what they cost, as data: `models.toml` and `prices.toml` with
the code that reads and checks them.
"""
