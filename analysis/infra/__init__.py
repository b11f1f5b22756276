"""Infrastructure a researcher never needs to open: how files are written, where models come from.

`atomic`: one file or one folder replaced in one step (a temporary beside the target, then a rename
or a swap), folder locks, and the sweeping of temporaries that killed writers left. `staging`: a
script's outputs written as one unit (staged, journalled, moved into place together when it
succeeds). `hub`: whether the Hugging Face hub answers, its offline mode, and TransformerLens's
pretrained loads with a clear error. `checkpoint`: what a model directory written by
`models.save_model` holds, checked before it loads. The science modules reach these through
`analysis.io` and `analysis.models`. `atlas_page`: the atlas as one offline HTML page (its script
and style beside it, circuitsvis's bundle read as a file), which the atlas script writes. `jobs`: many
jobs (one per model) through submitit or in this process.
"""
