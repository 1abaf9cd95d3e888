"""The style-mixing figure: ``python launch/style_mix.py checkpoint=PATH rows=85,100,75 cols=55,821,1789
styles=0-6 out=mix.png`` (the same as ``distgan-style-mix``; see distgan/commands/style_mix.py)."""

from distgan.cli import run_main
from distgan.commands.style_mix import main

if __name__ == "__main__":
    run_main(main)
