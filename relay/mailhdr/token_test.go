package mailhdr

import "testing"

func TestToken(t *testing.T) {
	a, b := Token(8), Token(12)
	if len(a) != 16 || len(b) != 24 || a == Token(8) {
		t.Errorf("Token(8) = %q, Token(12) = %q: want 16 and 24 hex digits, different each time", a, b)
	}
}
