"""The baselines MF-Diffuser is compared with, one readable file per method on the Method
interface (`mfdiffuser.methods.base`), registered in `mfdiffuser.methods.registry`: behaviour
cloning, per-agent Diffuser, the joint diffuser (MADiff), mean-field IQL and CQL. The MF-Diffuser
variants (ablations, Decision Diffuser) are registry entries of `mfdiffuser.methods.mf_diffuser`.
Core: no Ray, no MLflow."""
