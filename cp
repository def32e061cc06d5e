{
  "version": 1,
  "files": [
    {
      "path": "a.log",
      "dev": 65024,
      "ino": 5374432,
      "fingerprint": "e865760217d587a5",
      "generation": 0,
      "offset": 150,
      "line": 3
    }
  ]
}
