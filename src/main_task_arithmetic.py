"""Task Arithmetic (Ilharco et al., 2023): theta_0 + 0.3 * sum of task vectors."""

from adamerging.commands.pipeline import main

if __name__ == "__main__":
    main("task_arithmetic")
