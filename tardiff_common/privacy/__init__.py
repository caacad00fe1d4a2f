"""Differential privacy for federated TarDiff (no Flower imports here).

* ``config``          -- ``PrivacyConfig``, the ``privacy.*`` section of a run's config.
* ``dp_gradient_sum`` -- the DP release of a site's guidance gradient sum G_k: per-example
                         gradients (Opacus ``GradSampleModule``), each clipped to L2 norm <= C,
                         summed, plus N(0, sigma^2 C^2) per coordinate.
* ``dp_sgd``          -- ``DPTrainingSession``: the optional hook through which
                         ``train_classifier`` / ``train_diffusion`` run DP-SGD with Opacus'
                         ``PrivacyEngine`` (Poisson sampling, flat or per-layer clipping).
* ``compat``          -- makes a model Opacus-ready (``nn.GRU`` -> ``opacus.layers.DPGRU``,
                         same parameter names, swapped back afterwards).
* ``accounting``      -- a site's privacy ledger (every Gaussian mechanism it ran, as Opacus
                         accountant history entries), epsilon from Opacus' RDP / PRV
                         accountants, noise multipliers solved for a target epsilon, budgets.
* ``dp_scores``       -- the DP release of phases 3b / 4: the tuning / test score counts as one
                         Gaussian mechanism each (sensitivity sqrt(K) for K histograms), TSTR
                         only (nothing trained on raw training records), the record-level
                         metrics withheld.
* ``plan``            -- what a site will spend over a whole run (its DP schedule), from the
                         run config and the site's record counts.

Submodules are imported explicitly (this package imports nothing eagerly, so the run config
can import ``privacy.config`` without pulling in Opacus).
"""
