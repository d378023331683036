"""The registrar as an OIDC issuer: short-lived JWTs that istiod's ``JWT_RULE`` accepts."""
