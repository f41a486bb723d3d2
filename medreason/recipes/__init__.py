"""The training methods, one module each; every module registers its recipe (medreason.recipe.register) and
`medreason train` finds it by the recipe file's `trainer` key. A new method is a new file here."""
