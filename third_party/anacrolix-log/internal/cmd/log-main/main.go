// This package tests logging behaviour from a main package.
package main

import (
	"github.com/anacrolix/log"
)

func main() {
	log.Println("hello")
}
