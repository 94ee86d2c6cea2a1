"""The soak: thousands of tickets through a real relay and a fault-injecting upstream."""
