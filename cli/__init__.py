"""The `ml-connector` command line: operators' entry point to every part of the product."""
