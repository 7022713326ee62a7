"""The torch-free core: every contract the front ends, the engine and the workers share.

Nothing here imports torch (an import-linter contract): the app, the CLI and the
engine process import only this package and `engine.daemon`. Each module owns one
contract (the experiment schema, run planning, the store, metric names, the run
folder, ...); see ARCHITECTURE.md for the map.
"""
