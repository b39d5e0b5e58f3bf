"""What a labeler sees next and how a judgement is written.

`assignment` (leases, overlap, gold mixing, reclaim: the locks live here), `judgements` (the only
write path of a judgement), `validation` (what a labeler sends, checked in linear time), `gold`
(scoring against known answers, pausing), `task_content` (a task as the labeler sees it).
"""
