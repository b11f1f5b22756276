"""Infrastructure a researcher never needs to open: how files are written, where models come from.

`atomic`: one file or one folder replaced in one step (a temporary beside the target, then a rename
or a swap), folder locks, and the sweeping of temporaries that killed writers left. `staging`: a
script's outputs written as one unit (staged, journalled, moved into place together when it
succeeds). The science modules reach both through `analysis.io`.
"""
