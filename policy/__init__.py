"""The CrossGuard policy pack (`pulumi preview --policy-pack policy`); rules live in `policy.rules`."""
