"""Screens of the app: runs (home), composer, leaderboard, compare, dialogs."""
