"""`python -m streamsr` (also what `torchrun -m streamsr` runs)."""

from streamsr.cli import main

if __name__ == "__main__":
    main(prog_name="streamsr")
