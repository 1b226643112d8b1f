// Source of libelf_fixture.so, a small ELF shared object used by ElfVersionPatcherTests.
// Built with: g++ -O2 -shared -fPIC -s -o libelf_fixture.so elf_fixture.cpp   (Debian 12, GCC 12)
// It needs libstdc++.so.6 with several GLIBCXX_3.4.* versions (std::string, iostream).
#include <iostream>
#include <string>
extern "C" int fixture_length(const char* s) { std::string x(s); std::cout << x; return (int)x.size(); }
