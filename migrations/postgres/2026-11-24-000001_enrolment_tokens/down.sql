DROP TABLE enrolment_tokens;
