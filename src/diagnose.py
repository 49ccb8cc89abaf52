"""Will AdaMerging help on these models? Checks whether the merged model's prediction entropy tracks
its loss, on a labeled sample of each task's test split, and writes results/<model>/diagnostics.*.

    python src/diagnose.py --model ViT-B-32 [--samples 256] [--lambdas 0,0.1,...,1.0]
"""

from adamerging.commands.diagnose import main

if __name__ == "__main__":
    main()
