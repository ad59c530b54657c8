"""`python -m train.evaluate [overrides]`: see train.evaluate.run."""
from train.evaluate.run import main

if __name__ == "__main__":
    main()
