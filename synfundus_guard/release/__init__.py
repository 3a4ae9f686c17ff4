"""Release artefacts: reports, manifests, imagefolder metadata and CI report formats."""
