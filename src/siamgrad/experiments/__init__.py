"""The seed papers' experiment grids as data and the runner that trains and tabulates them
(``siamgrad reproduce``)."""
