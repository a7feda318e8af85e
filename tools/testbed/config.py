"""Plugin configurations: the IdP's jwtRule, policy building blocks, and the shop configuration
(a DENY for /debug*, open /healthz, /api/public/* for any caller with a token, /api/admin/* for
the admin realm role) that many tests and tools/soak.py run."""

ROLES_KEY = "request.auth.claims[realm_access][roles]"


def jwt_rule(idp, **changes):
    """The IdP's jwtRule; a change of None removes a field."""
    rule = {
        "issuer": idp.issuer,
        "audiences": ["shop"],
        "jwksUri": idp.jwks_uri,
        "jwksCluster": "idp",
        "outputPayloadToHeader": "x-jwt-payload",
        "outputClaimToHeaders": [{"header": "x-user", "claim": "preferred_username"}],
    }
    rule.update(changes)
    return {name: value for name, value in rule.items() if value is not None}


def principals(*values):
    return {"source": {"requestPrincipals": list(values)}}


def operation(paths=None, methods=None):
    fields = {"paths": paths, "methods": methods}
    return {"operation": {name: value for name, value in fields.items() if value is not None}}


def when(key, *values):
    return {"key": key, "values": list(values)}


def shop_policies():
    return [
        {"name": "deny-debug", "action": "DENY", "rules": [{"to": [operation(paths=["/debug*"])]}]},
        {"name": "shop", "action": "ALLOW", "rules": [
            {"to": [operation(paths=["/healthz"], methods=["GET"])]},
            {"from": [principals("*")], "to": [operation(paths=["/api/public/*"])]},
            {"from": [principals("*")], "to": [operation(paths=["/api/admin/*"])],
             "when": [when(ROLES_KEY, "admin")]},
        ]},
    ]


def shop_config(idp, **rule_changes):
    return {"jwtRules": [jwt_rule(idp, **rule_changes)], "policies": shop_policies()}
