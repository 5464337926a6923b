"""robench's attacks. Importing the package registers every attack family (each module registers its
classes where they are defined, in this order, which is the order error messages list them); build attacks
through ``registry.create_attack`` and ``registry.create_transfer_attack``."""

from . import apgd, autoattack, foolbox, pgd, transfer

__all__ = ["pgd", "apgd", "autoattack", "foolbox", "transfer"]
