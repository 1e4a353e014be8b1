DROP TABLE job_expirations;
DROP TABLE project_retention;
DROP TABLE webhook_delivery_attempts;
DROP TABLE webhook_deliveries;
DROP TABLE webhooks;
