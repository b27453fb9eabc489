# An example stack, in the same `key = value` format as the old Terraform template's
# terraform.tfvars. Copy it, change org_prefix and project, and pass it with --var-file.
org_prefix           = "acme"
project              = "acme-metaflow-demo"
region               = "us-west2"
zone                 = "us-west2-a"
stack                = "dev"
db_generation_number = 0     # the counter in the state file never goes below this
deploy_argo          = true
deploy_airflow       = false
