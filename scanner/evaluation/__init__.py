"""Evaluation and reporting: `imgscan eval` (few-shot protocol, metrics, baselines, figures, HTML report),
`imgscan report` (summary of a verdict file) and `imgscan explain` (occlusion map of one image).

Modules: metrics (pure numpy), protocol (data set and support/query splits), baselines, evaluate (judging
splits with the support index and verdict rules `scan` uses), plots, html_report, eval_report, report,
explain, browser (headless Chromium screenshots), cli (`register(app)`).
"""
