"""The wallet: what a patient's or a provider's own machine does (docs/wallet.md).

Records are encrypted here, before anything leaves the machine; keys are wrapped here for each
reader the patient chose; categories are blinded here. A node sees ciphertext, hashes, blinded
tags and sealed keys, never a record or a category name.
"""
