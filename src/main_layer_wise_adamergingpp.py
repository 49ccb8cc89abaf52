"""Layer-wise AdaMerging++: layer-wise AdaMerging over TIES-selected task vectors."""

from adamerging.commands.pipeline import main

if __name__ == "__main__":
    main("layer_wise_adamergingpp")
