"""fxrec's audience tools: who an advertiser's targeting reaches, before the campaign runs.

- `population`: a simulated population of users with targetable attributes and noisy data providers;
- `schema`: the targetable fields and the columnar form of users;
"""
