"""Generated from proto/eve/v1 by proto/generate.py. Do not edit."""
