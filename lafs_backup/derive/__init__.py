"""Derived files: a file that a known program makes from other files of the same snapshot is stored as
its recipe (the rule, the program, its arguments, its inputs' hashes, its own hash), proven at backup
time by running the program, and made again, and checked, when it is read back.

This package is the pure part, on the ground floor: the configuration's rules and which files they
match (``rules.py``), and the recipe as a snapshot's edge records it (``recipe.py``).  The program runs
in ``system/programs.py``; the backup proves recipes in ``backup/derive.py``; the read commands make
files again in ``read/remake.py``.
"""
