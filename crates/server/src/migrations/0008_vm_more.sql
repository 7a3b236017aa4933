-- VM devices (upstream TpmVO): one TPM per VM created with devices.tpm.enable. The key
-- provider and whether the resource key was made new are recorded as given (upstream keeps
-- them in its encrypted-resource-key tables); the host agent makes the TPM real.
CREATE TABLE tpm (
    uuid TEXT PRIMARY KEY,
    name TEXT,
    vm_instance_uuid TEXT NOT NULL,
    key_provider_uuid TEXT,
    resource_key_created_new BIGINT NOT NULL,
    create_date BIGINT NOT NULL,
    last_op_date BIGINT NOT NULL
);
CREATE UNIQUE INDEX tpm_vm ON tpm (vm_instance_uuid);
CREATE INDEX tpm_create ON tpm (create_date)
