//go:build race

package swarm

// raceEnabled: built with -race, whose detector allocates on its own and
// whose sync.Pool drops items at random; allocation counts mean nothing.
const raceEnabled = true
