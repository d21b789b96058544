"""Quality metrics: FID (frechet.py: statistics, cache, distance), the feature networks it runs on
(extractors.py) and FID during training (tracker.py)."""
