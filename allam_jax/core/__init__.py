"""The ground floor: small modules every other package may import (no model, data or training code)."""
