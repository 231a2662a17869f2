"""Budget-paced dispatch of bulk work: plans store their records per tenant, and a
dispatcher releases to the shared bulk queue only what each tenant's budget can take soon."""
