"""The pieces every layer uses: errors, the config, atomic files, folder kinds and disk checks, locks.
No torch here."""
