"""Task-wise AdaMerging++: task-wise AdaMerging over TIES-selected task vectors."""

from adamerging.commands.pipeline import main

if __name__ == "__main__":
    main("task_wise_adamergingpp")
