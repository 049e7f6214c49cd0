package dnsmx

import "testing"

func TestALabelAddress(t *testing.T) {
	for _, c := range []struct {
		in, want string
		ok       bool
	}{
		{"a@example.com", "a@example.com", true},
		{"hans@münchen.example", "hans@xn--mnchen-3ya.example", true},
		{"jürgen@münchen.example", "", false},
		{"jürgen@example.com", "", false},
	} {
		got, ok := ALabelAddress(c.in)
		if got != c.want || ok != c.ok {
			t.Errorf("ALabelAddress(%q) = %q, %v; want %q, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}
