// SPDX-License-Identifier: Apache-2.0
// The one Multicall3 entry point the x402 SDK's facilitator uses (`tryAggregate`, to
// diagnose a failed transfer simulation). Public chains have Multicall3 at its canonical
// address; a fresh anvil does not, so the demo chain installs this code there.
pragma solidity 0.8.37;

contract Multicall3 {
    struct Call {
        address target;
        bytes callData;
    }

    struct Result {
        bool success;
        bytes returnData;
    }

    function tryAggregate(bool requireSuccess, Call[] calldata calls)
        external
        payable
        returns (Result[] memory returnData)
    {
        returnData = new Result[](calls.length);
        for (uint256 i = 0; i < calls.length; ++i) {
            (bool success, bytes memory ret) = calls[i].target.call(calls[i].callData);
            require(success || !requireSuccess, "Multicall3: call failed");
            returnData[i] = Result(success, ret);
        }
    }
}
