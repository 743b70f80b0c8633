-- Channel credentials become provider-owned config: `settings` (a JSON object in the provider's
-- own shape) and `secrets` (name -> ciphertext), tagged by `provider`, which now holds the
-- provider's name. Paymentwall's columns move into that shape unchanged; each secret keeps its
-- ciphertext (the channel key stays its associated data), so no secret is decrypted here.
ALTER TABLE channels ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';
ALTER TABLE channels ADD COLUMN secrets TEXT NOT NULL DEFAULT '{}';
UPDATE channels SET
    provider = 'paymentwall',
    settings = json_object(
        'project_key', project_key,
        'widget', widget,
        'sign_version', sign_version,
        'pingback_allowlist', json(pingback_allowlist),
        'api_base_url', api_base_url
    ),
    secrets = json_object('secret_key', secret_ciphertext)
WHERE provider = 'PAYMENTWALL';
ALTER TABLE channels DROP COLUMN project_key;
ALTER TABLE channels DROP COLUMN secret_ciphertext;
ALTER TABLE channels DROP COLUMN widget;
ALTER TABLE channels DROP COLUMN sign_version;
ALTER TABLE channels DROP COLUMN pingback_allowlist;
ALTER TABLE channels DROP COLUMN api_base_url;
