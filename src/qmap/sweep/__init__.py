"""``qmap sweep``: a grid of ordinary ``qmap run`` points (:mod:`.spec`) executed as Ray tasks (:mod:`.execute`),
with a report across the points (:mod:`.report`). Ray is the optional extra ``qmap[ray]``; only
:mod:`.execute` needs it, and only when there is a point to run."""
