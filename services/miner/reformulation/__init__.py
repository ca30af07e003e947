"""Reformulation mining: sessions, defects, absorbing Markov chain, rewrite rules, rollback."""
