"""Generated protobuf modules (see schemas/codegen.py)."""
