"""Task-wise AdaMerging: one learned coefficient per task vector."""

from adamerging.commands.pipeline import main

if __name__ == "__main__":
    main("task_wise_adamerging")
