"""Layer-wise AdaMerging: one learned coefficient per task vector and state-dict entry."""

from adamerging.commands.pipeline import main

if __name__ == "__main__":
    main("layer_wise_adamerging")
